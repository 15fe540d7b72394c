"""Sample upstream services that ``farebox demo`` runs behind the gateway."""
