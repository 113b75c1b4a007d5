package badgerstore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// badgerLogger routes badger's logs to slog: errors and warnings as such, info and debug at debug level, since
// badger reports routine compactions and value-log GC at info level.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, format string, args ...any) {
	if !b.l.Enabled(context.Background(), level) {
		return
	}
	b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (b badgerLogger) Errorf(format string, args ...any)   { b.log(slog.LevelError, format, args...) }
func (b badgerLogger) Warningf(format string, args ...any) { b.log(slog.LevelWarn, format, args...) }
func (b badgerLogger) Infof(format string, args ...any)    { b.log(slog.LevelDebug, format, args...) }
func (b badgerLogger) Debugf(format string, args ...any)   { b.log(slog.LevelDebug-4, format, args...) }
