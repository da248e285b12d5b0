#!/usr/bin/env node
// A `solc`-compatible front for the npm solc package, for py-solc-x.
// `--version` answers "Version: <solc.version()>"; any other call compiles the
// standard-JSON input on stdin and prints only the JSON output (the packaged
// solcjs CLI prints a banner line first, which py-solc-x cannot parse).
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const solc = require(path.join(root, "node_modules", "solc"));

if (process.argv.includes("--version")) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
  process.exit(0);
}

// Imports resolve against the project root first, then node_modules.
function findImports(importPath) {
  for (const base of [root, path.join(root, "node_modules")]) {
    const candidate = path.resolve(base, importPath);
    if (candidate.startsWith(root) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `File not found: ${importPath}` };
}

const input = fs.readFileSync(0, "utf8");
process.stdout.write(solc.compile(input, { import: findImports }));
