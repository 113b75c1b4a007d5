package compile

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// maxLog is how much compiler output is kept: the last 64 KiB, where the error usually is.
const maxLog = 64 << 10

// waitDelay bounds how long Wait waits for output pipes after the process has gone (a grandchild may hold them).
const waitDelay = 5 * time.Second

// process is one compiler process: argv run without a shell, in its own process group so cancelling ctx kills
// the compiler and everything it started.
type process struct {
	argv   []string
	dir    string    // working directory; "" for the current one
	env    []string  // added to the agent's environment
	stdin  io.Reader // nil: empty
	stdout io.Writer // nil: into log
	log    *tailBuffer
}

// run starts the process and waits for it. A cancelled ctx kills the process group.
func (p process) run(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdin = p.stdin
	cmd.Stdout = p.stdout
	if cmd.Stdout == nil {
		cmd.Stdout = p.log
	}
	cmd.Stderr = p.log
	setProcessGroup(cmd)
	cmd.WaitDelay = waitDelay
	return cmd.Run()
}

// tailBuffer keeps the last n bytes written to it. Writes never fail, so a chatty compiler is never blocked.
type tailBuffer struct {
	mu  sync.Mutex
	n   int
	buf []byte
	cut bool // bytes were dropped from the front
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{n: n} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.n {
		p = p[len(p)-t.n:]
		t.buf = append(t.buf[:0], p...)
		t.cut = true
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.n; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.cut = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// String returns the kept bytes, marked when the front was dropped.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		return "[earlier output dropped]\n" + string(t.buf)
	}
	return string(t.buf)
}

// capBuffer keeps the first n bytes written to it and records whether more came. It never fails a write, so the
// writer is not killed by a broken pipe before we can report the overflow.
type capBuffer struct {
	mu       sync.Mutex
	n        int
	buf      bytes.Buffer
	overflow bool
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.n - c.buf.Len(); len(p) > room {
		c.buf.Write(p[:max(room, 0)])
		c.overflow = true
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}
