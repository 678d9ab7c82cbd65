// write.mjs: make one change to a meshnode document with the official
// JavaScript Automerge, as a JS client of meshnode would, and save it in
// the form POST /v1/doc/changes takes.
//
//   node write.mjs [--text] [--repeat N] DOC KEY VALUE OUT
//
// DOC is the document as GET /v1/doc serves it (Automerge's save format).
// The change sets the root key KEY to VALUE repeated N times (default 1):
// as an Automerge.ImmutableString, a plain string value, which meshnode
// accepts at rooms/<topic>/state/<key>; or, with --text, as a plain
// JavaScript string, which Automerge 3 stores as a collaborative Text
// object with one operation per character, which meshnode refuses. OUT
// receives Automerge.getLastLocalChange(doc): one change chunk.
//
// package.json pins @automerge/automerge 3.5.0 (the latest release when
// this was written). Its changes decode and apply in meshnode's core
// (Rust automerge 0.5 of 2023, through automerge-go): the change chunk
// format is the same. 3.x is the line whose default API has
// ImmutableString (RawString remains as a deprecated alias) and turns a
// plain string into Text. 2.2.9, the last 2.x, also writes changes the
// core reads, but its default API has neither ImmutableString nor
// RawString and stores a plain string as a scalar; only its
// "@automerge/automerge/next" entry point behaves like 3.x, with the
// older name RawString.
import { readFileSync, writeFileSync } from "node:fs"
import * as Automerge from "@automerge/automerge"

function usage(msg) {
  console.error(`write.mjs: ${msg}\nusage: node write.mjs [--text] [--repeat N] DOC KEY VALUE OUT`)
  process.exit(2)
}

let text = false
let repeat = 1
const pos = []
const args = process.argv.slice(2)
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--text") {
    text = true
  } else if (args[i] === "--repeat") {
    repeat = Number(args[++i])
    if (!Number.isInteger(repeat) || repeat < 1) usage(`--repeat takes a positive integer, not ${args[i]}`)
  } else {
    pos.push(args[i])
  }
}
if (pos.length !== 4) usage(`want 4 arguments, got ${pos.length}`)
const [docPath, key, unit, outPath] = pos
const value = unit.repeat(repeat)

let doc = Automerge.load(new Uint8Array(readFileSync(docPath)))
doc = Automerge.change(doc, d => {
  d[key] = text ? value : new Automerge.ImmutableString(value)
})
const change = Automerge.getLastLocalChange(doc)
if (!change) {
  console.error("write.mjs: Automerge made no change")
  process.exit(1)
}
writeFileSync(outPath, change)
console.log(JSON.stringify({ key, mode: text ? "text" : "immutable", chars: value.length, bytes: change.length, heads: Automerge.getHeads(doc) }))
