// How web/vendor/jssip-3.13.8.min.js was made: the `build()` of JsSIP 3.13.8's own
// npm-scripts.mjs (esbuild, IIFE exposing the global `JsSIP`, ES2015, minified), run on the
// published npm package (whose tarball ships lib/ only, no dist/).
//
//   mkdir /tmp/jssip && cd /tmp/jssip && npm install --no-save esbuild@0.27.2 jssip@3.13.8
//   cp /path/to/web/vendor/build-jssip.mjs . && node build-jssip.mjs node_modules/jssip out/jssip.min.js
//
// Not part of any build or test: the output is committed, so the page needs no build step.
import esbuild from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';

const [root = 'node_modules/jssip', outfile = 'out/jssip.min.js'] = process.argv.slice(2);
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const banner = `
 /*
  * JsSIP ${pkg.version}
  * ${pkg.description}
  * Copyright: 2012-2026 ${pkg.contributors.join(' ')}
  * Homepage: ${pkg.homepage}
  * License: ${pkg.license}
  */`;
await esbuild.build({
  entryPoints: [path.join(root, 'lib/JsSIP.js')],
  outfile: path.resolve(outfile),
  bundle: true,
  minify: true,
  sourcemap: false,
  format: 'iife',
  globalName: 'JsSIP',
  platform: 'browser',
  target: ['es2015'],
  supported: { 'template-literal': false },
  banner: { js: banner },
});
