// Copies the browser build into the server's demo page, which embeds it with include_str!,
// so `cargo build` needs no npm. Run by `npm run build`; commit the result.
import { copyFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const from = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const to = fileURLToPath(new URL('../../../src/demo/page/client.js', import.meta.url));
copyFileSync(from, to);
console.log(`copied ${from} -> ${to}`);
