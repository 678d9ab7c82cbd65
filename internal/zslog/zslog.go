// Package zslog routes log/slog records (libp2p and GossipSub log through
// slog) into a zerolog.Logger, one event per record.
package zslog

import (
	"context"
	"log/slog"

	"github.com/rs/zerolog"
)

// Handler is a slog.Handler writing to zerolog.
type Handler struct {
	lg     zerolog.Logger
	attrs  []slog.Attr
	group  string
	demote map[string]bool
}

// New returns a handler writing to lg. Records below min are dropped
// before they are formatted.
func New(lg zerolog.Logger) *Handler { return &Handler{lg: lg} }

// Demote returns a handler that logs records with these exact messages at
// debug level: for a library's warnings about conditions it creates
// itself and that need no action.
func (h *Handler) Demote(msgs ...string) *Handler {
	c := *h
	c.demote = map[string]bool{}
	for m := range h.demote {
		c.demote[m] = true
	}
	for _, m := range msgs {
		c.demote[m] = true
	}
	return &c
}

func level(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.InfoLevel
	default:
		return zerolog.DebugLevel
	}
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool {
	return level(l) >= h.lg.GetLevel() && level(l) >= zerolog.GlobalLevel()
}

// Handle implements slog.Handler.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	lvl := level(r.Level)
	if h.demote[r.Message] {
		lvl = zerolog.DebugLevel
	}
	ev := h.lg.WithLevel(lvl)
	if ev == nil {
		return nil
	}
	for _, a := range h.attrs {
		ev = addAttr(ev, h.group, a)
	}
	r.Attrs(func(a slog.Attr) bool {
		ev = addAttr(ev, h.group, a)
		return true
	})
	ev.Msg(r.Message)
	return nil
}

func addAttr(ev *zerolog.Event, group string, a slog.Attr) *zerolog.Event {
	key := a.Key
	if group != "" {
		key = group + "." + key
	}
	if a.Key == "logger" {
		key = "subsystem"
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		for _, ga := range v.Group() {
			ev = addAttr(ev, key, ga)
		}
		return ev
	case slog.KindString:
		return ev.Str(key, v.String())
	case slog.KindInt64:
		return ev.Int64(key, v.Int64())
	case slog.KindBool:
		return ev.Bool(key, v.Bool())
	case slog.KindDuration:
		return ev.Dur(key, v.Duration())
	default:
		if err, ok := v.Any().(error); ok {
			return ev.AnErr(key, err)
		}
		return ev.Str(key, v.String())
	}
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), attrs...)
	return &c
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	if c.group != "" {
		name = c.group + "." + name
	}
	c.group = name
	return &c
}
