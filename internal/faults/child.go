package faults

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ChildEnv names the helper a re-executed test binary runs instead of its tests.
const ChildEnv = "NPU_FAULTS_CHILD"

// Helper is what a child runs; args are the child's command-line arguments. It reports on stdout with Say.
type Helper func(args []string) error

// RunChild must be called first in TestMain. In a child started by Child it runs the named helper and exits
// (status 0, or 1 after printing "error: ..." on stdout); in the test process itself it returns at once.
func RunChild(helpers map[string]Helper) {
	name := os.Getenv(ChildEnv)
	if name == "" {
		return
	}
	h, ok := helpers[name]
	if !ok {
		Say("error: no helper %q in this test binary", name)
		os.Exit(2)
	}
	if err := h(os.Args[1:]); err != nil {
		Say("error: %v", err)
		os.Exit(1)
	}
	Say("done")
	os.Exit(0)
}

// Say writes one report line to stdout at once (unbuffered), so the parent sees it before a kill.
func Say(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// Proc is a child process whose stdout and stderr lines the test reads as they come.
type Proc struct {
	t        testing.TB
	cmd      *exec.Cmd
	lines    chan string
	deadline time.Time

	mu   sync.Mutex
	tail []string // the last lines read, for failure messages
	done bool
	err  error
}

// maxLine bounds one output line; maxTail how many lines a failure message shows.
const (
	maxLine = 1 << 20
	maxTail = 40
)

// Child re-executes the test binary running helper name with args. The test must call RunChild in TestMain.
func Child(t testing.TB, timeout time.Duration, name string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), ChildEnv+"="+name)
	return Start(t, timeout, cmd)
}

// Start starts cmd; every line it prints on stdout or stderr can be read with Next. The process is killed at
// the end of the test if it is still running, and timeout bounds every wait for output.
func Start(t testing.TB, timeout time.Duration, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{t: t, cmd: cmd, lines: make(chan string, 256), deadline: time.Now().Add(timeout)}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	var wg sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		wg.Go(func() {
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), maxLine)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
			_, _ = io.Copy(io.Discard, r) // a line over maxLine: keep the child from blocking on a full pipe
		})
	}
	go func() {
		wg.Wait()
		close(p.lines)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("last output of %s:\n%s", cmd.Path, p.Tail())
		}
	})
	return p
}

// Next returns the next output line, or false once the process closed its output. It fails the test when the
// timeout given to Start passes first.
func (p *Proc) Next() (string, bool) {
	p.t.Helper()
	timer := time.NewTimer(time.Until(p.deadline))
	defer timer.Stop()
	select {
	case line, ok := <-p.lines:
		if ok {
			p.mu.Lock()
			p.tail = append(p.tail, line)
			if len(p.tail) > maxTail {
				p.tail = p.tail[len(p.tail)-maxTail:]
			}
			p.mu.Unlock()
		}
		return line, ok
	case <-timer.C:
		p.t.Fatalf("%s: no output before the deadline; last lines:\n%s", p.cmd.Path, p.Tail())
		return "", false
	}
}

// Await reads lines until one contains substr and returns it; it fails the test if the output ends first.
func (p *Proc) Await(substr string) string {
	p.t.Helper()
	for {
		line, ok := p.Next()
		if !ok {
			p.t.Fatalf("%s ended (%v) before printing %q; last lines:\n%s", p.cmd.Path, p.Wait(), substr, p.Tail())
		}
		if strings.Contains(line, substr) {
			return line
		}
	}
}

// Kill sends SIGKILL (if the process still runs) and reaps it. It returns whether the signal ended the
// process, as opposed to the process having exited on its own first.
func (p *Proc) Kill() bool {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	return killed(p.Wait())
}

// KillAfter kills the process d from now unless it exits first; it returns like Kill.
func (p *Proc) KillAfter(d time.Duration) bool {
	timer := time.AfterFunc(d, func() { _ = p.cmd.Process.Signal(syscall.SIGKILL) })
	defer timer.Stop()
	return killed(p.Wait())
}

func killed(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return false
}

// Wait reads the remaining output and waits for the process to exit, killing it at the deadline; it returns
// the exit error (nil for status 0). Calling it again returns the same result.
func (p *Proc) Wait() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return p.err
	}
	stop := time.AfterFunc(time.Until(p.deadline), func() { _ = p.cmd.Process.Kill() })
	defer stop.Stop()
	for line := range p.lines {
		p.tail = append(p.tail, line)
		if len(p.tail) > maxTail {
			p.tail = p.tail[len(p.tail)-maxTail:]
		}
	}
	p.err = p.cmd.Wait()
	p.done = true
	return p.err
}

// Tail returns the last lines read, for failure messages.
func (p *Proc) Tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}
