package node

import (
	"github.com/libp2p/go-libp2p/gologshim"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/zslog"
)

// RouteLibp2pLogs sends the logs of libp2p (which logs through slog, into
// one handler for the whole process) to lg, with component=libp2p. Call it
// once per process, before starting nodes: the handler is global, so a
// call per node would hand every node's libp2p logs to the last one.
func RouteLibp2pLogs(lg zerolog.Logger) {
	gologshim.SetDefaultHandler(zslog.New(lg.With().Str("component", "libp2p").Logger()))
}
