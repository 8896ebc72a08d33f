#!/usr/bin/env node
// Makes Particle modules with binary-version-reader 3.1.3's own encoder, so that Tern's reader
// can be checked on kinds of modules the corpus lacks: compressed modules, compressed asset
// modules (DROP_MODULE_INFO), combined files, and modules with an added security-mode
// extension (in the prefix on platforms whose modules grow left, else in the suffix).
//
// Usage: node tests/oracle/particle-encode.js OUTDIR FILE...
//
// For each input module FILE it writes what the encoder accepts (it refuses, for example, to
// compress a padded module) into OUTDIR and prints one JSON line per file written:
//   {"path", "kind": "compressed"|"asset"|"combined"|"protected", "source",
//    "compression": {"headerSize", "method", "windowBits", "uncompressedSize"}  (compressed kinds:
//        the header the encoder was asked to write: its size, raw Deflate, the window bits
//        passed to zlib (0 = default), and the length of the data it compressed, which
//        leaves out the prefix and suffix of DROP_MODULE_INFO modules),
//    "parts": [length, …]  (combined: the lengths of the modules combined, in order)}
'use strict';

const fs = require('fs');
const path = require('path');
const bvr = require(path.join(__dirname, 'node_modules', 'binary-version-reader'));

async function attempt(fn) {
	try {
		return await fn();
	} catch (err) {
		return null;
	}
}

async function main() {
	const [outDir, ...files] = process.argv.slice(2);
	if (!outDir || files.length === 0) {
		process.stderr.write('usage: particle-encode.js OUTDIR FILE...\n');
		process.exit(2);
	}
	const emit = (name, data, record) => {
		const out = path.join(outDir, name);
		fs.writeFileSync(out, data);
		process.stdout.write(JSON.stringify({ path: out, ...record }) + '\n');
	};
	for (let i = 0; i < files.length; i++) {
		const source = files[i];
		const data = fs.readFileSync(source);
		const base = `${i}-${path.basename(source, '.bin')}`;

		// Alternate the default window with an explicit one, which the header records.
		const windowBits = i % 2 === 0 ? 0 : 12;
		const options = windowBits ? { zlib: { windowBits } } : undefined;
		const compressed = await attempt(() => bvr.compressModule(data, options));
		if (compressed) {
			// With DROP_MODULE_INFO the encoder compresses only what lies between the prefix
			// (with its extensions) and the suffix; otherwise the whole module.
			const info = await new bvr.HalModuleParser().parseBuffer({ fileBuffer: data });
			const dropped = info.prefixInfo.moduleFlags & bvr.ModuleInfo.Flags.DROP_MODULE_INFO;
			const uncompressedSize = dropped
				? data.length - info.prefixInfo.prefixSize - info.suffixInfo.suffixSize - 4
				: data.length;
			emit(`${base}.compressed.bin`, compressed, {
				kind: 'compressed',
				source,
				compression: { headerSize: 8, method: 0, windowBits, uncompressedSize },
			});
		}

		const assetData = data.slice(0, Math.min(data.length, 3000 + i * 7));
		const asset = await attempt(() => bvr.createAssetModule(assetData, `asset-${i}.bin`, options));
		if (asset) {
			emit(`${base}.asset.bin`, asset, {
				kind: 'asset',
				source,
				compression: { headerSize: 8, method: 0, windowBits, uncompressedSize: assetData.length },
			});
		}

		const next = fs.readFileSync(files[(i + 1) % files.length]);
		const combined = await attempt(() => bvr.combineModules([data, next]));
		if (combined && combined.length === data.length + next.length) {
			emit(`${base}.combined.bin`, combined, { kind: 'combined', source, parts: [data.length, next.length] });
		}

		const certificate = i % 2 === 0 ? undefined : Buffer.from('tern test certificate '.repeat(i % 7 + 1));
		const protectedModule = await attempt(() => bvr.createProtectedModule(data, certificate));
		if (protectedModule) {
			emit(`${base}.protected.bin`, protectedModule, { kind: 'protected', source });
		}
	}
}

main().catch((err) => {
	process.stderr.write(`particle-encode: ${err && err.stack ? err.stack : err}\n`);
	process.exit(1);
});
