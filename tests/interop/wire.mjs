// What AuthFetch really puts on the wire: a recording wrapper around the global
// `fetch`, installed before @bsv/sdk loads (sdk.mjs imports this module first),
// because the SDK's SimplifiedFetchTransport binds `globalThis.fetch` once, when
// its module is evaluated. Without an active recording the wrapper only passes
// calls on.
//
//   const wire = startRecording('http://127.0.0.1:8402')   // an origin
//   ... AuthFetch requests ...
//   stopRecording(); wire -> [{method, path, requestHeaders, requestBody,
//                              status, headers, body} | {..., error}]
// Only requests to that origin are kept (not the wallet's calls to the devnet).
// Bodies are kept as text, cut at BODY_LIMIT characters.

const BODY_LIMIT = 8192
const realFetch = globalThis.fetch
let recording = null

export function startRecording (origin) {
  recording = { origin, exchanges: [] }
  return recording.exchanges
}

export function stopRecording () {
  recording = null
}

function cut (text) {
  return text.length > BODY_LIMIT ? `${text.slice(0, BODY_LIMIT)}...(${text.length} characters)` : text
}

function requestHeadersObject (headers) {
  const out = {}
  for (const [name, value] of new Headers(headers ?? {})) out[name] = value
  return out
}

async function recorded (input, init = {}) {
  const active = recording
  const url = new URL(typeof input === 'string' || input instanceof URL ? String(input) : input.url)
  if (active == null || url.origin !== active.origin) return await realFetch(input, init)
  const entry = {
    method: init.method ?? 'GET',
    path: url.pathname + url.search,
    requestHeaders: requestHeadersObject(init.headers),
    requestBody: typeof init.body === 'string' ? cut(init.body) : init.body == null ? null : `(${init.body.length ?? '?'} bytes)`
  }
  active.exchanges.push(entry)
  let response
  try {
    response = await realFetch(input, init)
  } catch (err) {
    entry.error = err?.message ?? String(err)
    throw err
  }
  entry.status = response.status
  entry.headers = {}
  response.headers.forEach((value, name) => { entry.headers[name] = value })
  entry.body = cut(await response.clone().text())
  return response
}

globalThis.fetch = recorded
