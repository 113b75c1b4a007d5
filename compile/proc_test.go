package compile

import (
	"errors"
	"strings"
	"testing"
)

func TestTailBuffer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{"fits", []string{"ab", "cd"}, "abcd"},
		{"exactly full", []string{"abc", "de"}, "abcde"},
		{"drops front", []string{"abc", "def"}, "[earlier output dropped]\nbcdef"},
		{"one big write", []string{"0123456789"}, "[earlier output dropped]\n56789"},
		{"big then small", []string{"0123456789", "x"}, "[earlier output dropped]\n6789x"},
	}
	for _, tc := range tests {
		b := newTailBuffer(5)
		for _, w := range tc.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("%s: Write = %d, %v", tc.name, n, err)
			}
		}
		if got := b.String(); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCapBuffer(t *testing.T) {
	t.Parallel()
	c := &capBuffer{n: 4}
	for _, w := range []string{"ab", "cde", "f"} {
		if n, err := c.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if c.buf.String() != "abcd" || !c.overflow {
		t.Errorf("kept %q, overflow %v", c.buf.String(), c.overflow)
	}
}

func TestCompileErrorMessage(t *testing.T) {
	t.Parallel()
	e := &CompileError{Backend: "command", Err: ErrCompileFailed, Log: "step 1\n" + strings.Repeat("x", 1000) + "\nerror: out of memory\n"}
	msg := e.Error()
	if strings.Contains(msg, "\n") || !strings.HasSuffix(msg, "error: out of memory") || len(msg) > maxErrorLog+100 {
		t.Errorf("message %q", msg)
	}
	if !errors.Is(e, ErrCompileFailed) {
		t.Error("CompileError does not unwrap")
	}
	if got := (&CompileError{Backend: "sim", Err: ErrTimeout}).Error(); got != "sim backend: compile timed out" {
		t.Errorf("message without log = %q", got)
	}
}
