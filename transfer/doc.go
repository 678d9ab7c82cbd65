// Package transfer will own the share folder, manifests and chunked,
// verified downloads (see DESIGN.md, "Library and transfer"). The
// document's library entries it writes are already defined in crdt.
package transfer
