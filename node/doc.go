// Package node is the runtime of one meshnode: configuration (flags over
// MESHNODE_* environment over TOML file over defaults), the data directory
// (identity.key, fleet.token, api.token, api.addr, doc/), the supervised
// services, the event bus and the local HTTP API. It is the one place that
// wires crdt and mesh together.
//
// Services run under a supervisor with a policy each: Required (its
// failure stops the node), Restart (with backoff) or BestEffort. A failure
// is logged once and published once as a service.failed event. On
// SIGINT/SIGTERM the node says Goodbye, stops every service, flushes the
// document and closes the host.
package node
