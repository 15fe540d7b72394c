// Node 18 (Debian bookworm's nodejs) keeps WebCrypto in node:crypto only, and
// @bsv/sdk finds no random number generator without a global `crypto`.
// Import this module before the SDK; on node 19 and later it does nothing.
import { webcrypto } from 'node:crypto'

if (globalThis.crypto == null) globalThis.crypto = webcrypto
