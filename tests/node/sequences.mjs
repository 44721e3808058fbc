// The Rust crate's generated document sequences (document/examples/sequences.rs), for the
// cross-checks of conflist.js (conflist.test.mjs under Node, browser.test.mjs in Chromium).

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * `{ seed, sequences: [{ steps: [{ xml, outcome }] }] }` for `seed` and `count` sequences, from
 * `cargo run -q -p conflist-document --example sequences -- SEED COUNT`, or from the file named
 * by CONFLIST_SEQUENCES_FILE (its output saved before, to skip cargo).
 */
export function rustSequences(seed, count) {
  if (process.env.CONFLIST_SEQUENCES_FILE) return JSON.parse(readFileSync(process.env.CONFLIST_SEQUENCES_FILE, 'utf8'));
  const args = ['run', '-q', '--locked', '-p', 'conflist-document', '--example', 'sequences', '--', String(seed), String(count)];
  const r = spawnSync('cargo', args, { cwd: REPO, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, timeout: 600_000 });
  if (r.error) throw new Error(`cargo ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`cargo ${args.join(' ')} exited with ${r.status}:\n${r.stderr}`);
  return JSON.parse(r.stdout);
}
