#!/usr/bin/env node
// Validate glTF/GLB files with the Khronos glTF-Validator (npm gltf-validator) and print one JSON
// report per file on stdout: {"file", "numErrors", "numWarnings", "numInfos", "messages": [...], "info"}.
// Usage: node validate_gltf.js FILE.glb [FILE2.glb ...]   Exit status 0 when every file was read
// (whatever the report says: the caller judges the counts), 1 on a usage or read failure.
"use strict";
const fs = require("fs");
const validator = require("gltf-validator");

async function validateFile(file) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: file,
    maxIssues: 200,
    // A GLB is self-contained; an external reference is itself a problem worth failing on.
    externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri} not allowed`)),
  });
  const issues = report.issues;
  return {
    file,
    numErrors: issues.numErrors,
    numWarnings: issues.numWarnings,
    numInfos: issues.numInfos,
    messages: issues.messages.map((m) => ({ code: m.code, severity: m.severity, message: m.message, pointer: m.pointer })),
    info: report.info,
    validatorVersion: report.validatorVersion,
  };
}

async function main() {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node validate_gltf.js FILE.glb [...]");
    process.exit(1);
  }
  const reports = [];
  for (const file of files) reports.push(await validateFile(file));
  process.stdout.write(JSON.stringify(reports) + "\n");
}

main().catch((err) => {
  console.error(`validate_gltf: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
