package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong in a configuration: the key (its YAML path, e.g. store.gc_interval, or an
// environment variable), the line of the file when it comes from one, and what is wrong in an operator's words.
type Problem struct {
	Key  string `json:"key"`
	Line int    `json:"line,omitempty"`
	Msg  string `json:"message"`
}

func (p Problem) String() string {
	s := p.Key + ": " + p.Msg
	if p.Line > 0 {
		s = "line " + strconv.Itoa(p.Line) + ": " + s
	}
	return s
}

// Error is every problem found in a configuration at once. errors.Is(err, ErrInvalid) holds.
type Error struct {
	File     string // "" when the problems come from the environment or flags
	Problems []Problem
}

func (e *Error) Error() string {
	where := "config"
	if e.File != "" {
		where = "config " + e.File
	}
	if len(e.Problems) == 1 {
		return where + ": " + e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems:", where, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String()
}

// Unwrap makes every config problem ErrInvalid (the CLI exits with its usage code).
func (e *Error) Unwrap() error { return ErrInvalid }

// decodeFile decodes a config file's YAML over c, collecting every problem with its line: unknown keys (with the
// nearest known one), values of the wrong kind, a second document. lines maps each key path found to its line.
func (c *Config) decodeFile(data []byte, lines map[string]int) []Problem {
	var probs []Problem
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return []Problem{{Key: "(file)", Line: yamlErrLine(err), Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	var second yaml.Node
	if err := dec.Decode(&second); err == nil {
		probs = append(probs, Problem{Key: "(file)", Line: second.Line, Msg: "a second YAML document (after ---): the config is one document"})
	} else if !errors.Is(err, io.EOF) {
		probs = append(probs, Problem{Key: "(file)", Line: yamlErrLine(err), Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")})
	}
	if len(doc.Content) == 0 {
		return probs
	}
	decodeNode(doc.Content[0], reflect.ValueOf(c).Elem(), "", lines, &probs)
	return probs
}

var durationType = reflect.TypeOf(time.Duration(0))

// decodeNode sets v from n, whose key path is path.
func decodeNode(n *yaml.Node, v reflect.Value, path string, lines map[string]int, probs *[]Problem) {
	add := func(line int, key, msg string) { *probs = append(*probs, Problem{Key: key, Line: line, Msg: msg}) }
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // "key:" with no value keeps the default
	}
	t := v.Type()
	if t.Kind() == reflect.Struct && t != durationType {
		if n.Kind != yaml.MappingNode {
			add(n.Line, orFile(path), "want a mapping of keys ("+strings.Join(yamlKeys(t), ", ")+")")
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if seen[k.Value] {
				add(k.Line, key, "given twice")
				continue
			}
			seen[k.Value] = true
			f, ok := fieldByTag(v, k.Value)
			if !ok {
				add(k.Line, key, "no such key"+suggest(path, k.Value))
				continue
			}
			lines[key] = k.Line
			decodeNode(val, f, key, lines, probs)
		}
		return
	}
	if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct {
		// A list of sections (ovcache.dirs): each element is decoded like a section, its keys as path[i].key.
		if n.Kind != yaml.SequenceNode {
			add(n.Line, path, "want a list of mappings")
			return
		}
		list := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, e := range n.Content {
			decodeNode(e, list.Index(i), fmt.Sprintf("%s[%d]", path, i), lines, probs)
		}
		v.Set(list)
		return
	}
	scalar := func() (string, bool) {
		if n.Kind != yaml.ScalarNode {
			add(n.Line, path, "want a single value, not a list or mapping")
			return "", false
		}
		return n.Value, true
	}
	switch v.Interface().(type) {
	case time.Duration:
		if s, ok := scalar(); ok {
			d, err := time.ParseDuration(s)
			if err != nil {
				add(n.Line, path, fmt.Sprintf("%q is not a duration (such as 500ms, 15s, 10m, 2h)", s))
				return
			}
			v.SetInt(int64(d))
		}
	case ByteSize:
		if s, ok := scalar(); ok {
			b, err := ParseByteSize(s)
			if err != nil {
				add(n.Line, path, fmt.Sprintf("%q is not a size (a number of bytes or one with a unit such as 512MiB, 50GiB)", s))
				return
			}
			v.SetUint(uint64(b))
		}
	case bool:
		if s, ok := scalar(); ok {
			var b bool
			if n.Decode(&b) != nil {
				add(n.Line, path, fmt.Sprintf("%q is not true or false", s))
				return
			}
			v.SetBool(b)
		}
	case int:
		if s, ok := scalar(); ok {
			i, err := strconv.Atoi(s)
			if err != nil {
				add(n.Line, path, fmt.Sprintf("%q is not a whole number", s))
				return
			}
			v.SetInt(int64(i))
		}
	case string:
		if s, ok := scalar(); ok {
			v.SetString(s)
		}
	case []string:
		if n.Kind != yaml.SequenceNode {
			add(n.Line, path, "want a list such as [a, b]")
			return
		}
		list := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				add(e.Line, path, "want a list of single values")
				return
			}
			list = append(list, e.Value)
		}
		v.Set(reflect.ValueOf(list))
	default:
		add(n.Line, path, "unsupported option type "+t.String())
	}
}

func orFile(path string) string {
	if path == "" {
		return "(file)"
	}
	return path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func fieldByTag(v reflect.Value, tag string) (reflect.Value, bool) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Tag.Get("yaml") == tag {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func yamlKeys(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		out = append(out, t.Field(i).Tag.Get("yaml"))
	}
	return out
}

// Keys lists every option's key path, e.g. store.gc_interval.
func Keys() []string {
	var out []string
	var walkT func(t reflect.Type, prefix string)
	walkT = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := join(prefix, f.Tag.Get("yaml"))
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				walkT(f.Type, key)
				continue
			}
			out = append(out, key)
		}
	}
	walkT(reflect.TypeOf(Config{}), "")
	sort.Strings(out)
	return out
}

// suggest names the nearest key: in the same section by spelling, or the same name in another section.
func suggest(section, key string) string {
	var cands []string
	for _, full := range Keys() {
		cands = append(cands, full)
		for i := strings.LastIndex(full, "."); i >= 0; i = strings.LastIndex(full[:i], ".") {
			cands = append(cands, full[:i]) // section names are keys too
		}
	}
	best, bestD := "", 1<<30
	for _, full := range cands {
		sec, name := "", full
		if i := strings.LastIndex(full, "."); i >= 0 {
			sec, name = full[:i], full[i+1:]
		}
		d := levenshtein(strings.ToLower(key), name)
		if sec != section {
			if d != 0 {
				continue // another section: only the very name
			}
			d = 1
		}
		if d < bestD {
			best, bestD = full, d
		}
	}
	if best == "" || bestD > max(2, len(key)/3) {
		return ""
	}
	if section != "" && strings.HasPrefix(best, section+".") {
		best = strings.TrimPrefix(best, section+".")
	}
	return " (did you mean " + best + "?)"
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// yamlErrLine finds "line N" in a yaml syntax error.
func yamlErrLine(err error) int {
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		n := 0
		for _, r := range s[i+5:] {
			if r < '0' || r > '9' {
				break
			}
			n = n*10 + int(r-'0')
		}
		return n
	}
	return 0
}

// validationProblems splits Validate's error ("key: message" per line) into problems with the file's lines.
func validationProblems(err error, lines map[string]int) []Problem {
	var out []Problem
	for _, msg := range strings.Split(err.Error(), "\n") {
		key, rest, ok := strings.Cut(msg, ": ")
		if !ok || strings.ContainsAny(key, " ") {
			out = append(out, Problem{Key: "(config)", Msg: msg})
			continue
		}
		out = append(out, Problem{Key: key, Line: lines[key], Msg: rest})
	}
	return out
}
