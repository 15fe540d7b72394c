// @bsv/sdk and @bsv/wallet-toolbox for the .mjs scripts here, as one copy.
//
// The toolbox is CommonJS and requires the SDK's CommonJS build; an ESM
// `import ... from '@bsv/sdk'` would load a second copy (dist/esm) whose
// Beef, MerklePath and Transaction objects are not the toolbox's. So the SDK
// is required here too, and everything shares the toolbox's copy.
import './webcrypto.mjs'
import './wire.mjs' // before the SDK binds globalThis.fetch

import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

export const sdk = require('@bsv/sdk')
export const toolbox = require('@bsv/wallet-toolbox')
export const knex = require('knex')
// Two of the toolbox monitor's tasks, which the package does not export by name.
export const { TaskSendWaiting } = require('@bsv/wallet-toolbox/out/src/monitor/tasks/TaskSendWaiting.js')
export const { TaskCheckForProofs } = require('@bsv/wallet-toolbox/out/src/monitor/tasks/TaskCheckForProofs.js')
