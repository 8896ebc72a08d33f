#!/usr/bin/env node
// The Particle oracle: runs binary-version-reader's HalModuleParser (the npm package Particle
// ships, pinned to 3.1.3 in package.json) over each file named on the command line and prints
// one JSON object per file (JSON Lines) with what that parser reported, untouched except for
// turning hex-string addresses into numbers.
//
// Usage: node tests/oracle/particle-inspect.js FILE...
//
// Output per file, when the parser accepted it:
//   {"path", "ok": true, "prefixOffset", "prefixScore", "startAddress", "endAddress",
//    "flags", "moduleVersion", "platformId", "moduleFunction", "moduleIndex",
//    "dependencies": [{"function", "index", "version"}, {…}]   (both slots, as stored),
//    "productId", "productVersion" (-1 when the suffix is too short to hold them),
//    "suffixSize", "sha256" (hex), "crcOk", "storedCrc", "actualCrc", "size"}
// and when it threw:
//   {"path", "ok": false, "error": "<message>"}
//
// `prefixScore` is the parser's own confidence score for the prefix at the offset it chose
// (`_validateModulePrefix`): 0 means the parser found no plausible module_info anywhere and
// fell back to reading offset 0 anyway.
'use strict';

const fs = require('fs');
const path = require('path');
const { HalModuleParser } = require(path.join(__dirname, 'node_modules', 'binary-version-reader'));

async function inspect(file) {
	const parser = new HalModuleParser();
	try {
		const info = await parser.parseFile(file);
		const p = info.prefixInfo;
		const s = info.suffixInfo;
		const buf = info.fileBuffer;
		return {
			path: file,
			ok: true,
			prefixOffset: p.prefixOffset,
			prefixScore: parser._validateModulePrefix(buf, p.prefixOffset).score,
			startAddress: Number.parseInt(p.moduleStartAddy, 16),
			endAddress: Number.parseInt(p.moduleEndAddy, 16),
			flags: p.moduleFlags,
			moduleVersion: p.moduleVersion,
			platformId: p.platformID,
			moduleFunction: p.moduleFunction,
			moduleIndex: p.moduleIndex,
			dependencies: [
				{ function: p.depModuleFunction, index: p.depModuleIndex, version: p.depModuleVersion },
				{ function: p.dep2ModuleFunction, index: p.dep2ModuleIndex, version: p.dep2ModuleVersion },
			],
			prefixSize: p.prefixSize,
			prefixExtensions: (p.extensions || []).map((e) => ({ type: e.type, length: e.length, offset: e.offset })),
			suffixExtensions: (s.extensions || []).map((e) => ({ type: e.type, length: e.length, offset: e.offset })),
			productId: s.productId,
			productVersion: s.productVersion,
			suffixSize: s.suffixSize,
			sha256: s.fwUniqueId,
			crcOk: info.crc.ok,
			storedCrc: info.crc.storedCrc,
			actualCrc: info.crc.actualCrc,
			size: buf.length,
		};
	} catch (err) {
		return { path: file, ok: false, error: String((err && err.message) || err) };
	}
}

async function main() {
	const files = process.argv.slice(2);
	if (files.length === 0) {
		process.stderr.write('usage: particle-inspect.js FILE...\n');
		process.exit(2);
	}
	for (const file of files) {
		process.stdout.write(JSON.stringify(await inspect(file)) + '\n');
	}
}

main().catch((err) => {
	process.stderr.write(`particle-inspect: ${err && err.stack ? err.stack : err}\n`);
	process.exit(1);
});
