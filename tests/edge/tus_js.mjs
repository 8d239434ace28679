// tus-js-client (node) against a StreamGate edge: run by tests/edge/test_uploads_tus_js.py.
// usage: node tus_js.mjs <endpoint> <file> parallel|deferred [parts]
// Prints {"url": ..., "offset": ...} on success; exits 1 with the error otherwise.
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import * as tus from 'tus-js-client';

const [endpoint, file, mode, parts = '4'] = process.argv.slice(2);
const options = {
  endpoint,
  metadata: { filename: path.basename(file), title: `tus-js ${mode}` },
  retryDelays: [],  // a failure fails the test; nothing is retried
  removeFingerprintOnSuccess: true,
};
let input;
if (mode === 'parallel') {
  input = fs.createReadStream(file);  // a file source: tus-js-client slices it per part
  Object.assign(options, { parallelUploads: Number(parts) });
} else if (mode === 'deferred') {
  // A plain stream: its length is unknown to the client until it ends.
  input = fs.createReadStream(file).pipe(new PassThrough());
  // 3 MiB, not a divisor of the file's size: tus-js-client 4.3's StreamSource never resolves the
  // read after a stream that ended exactly on a chunk boundary (a client bug, not the server's).
  Object.assign(options, { uploadLengthDeferred: true, chunkSize: 3 * 1024 * 1024 });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
let offset = 0;
const upload = new tus.Upload(input, {
  ...options,
  onProgress(sent) { offset = sent; },
  onError(error) { console.error(String(error)); process.exit(1); },
  onSuccess() { console.log(JSON.stringify({ url: upload.url, offset })); },
});
upload.start();
