package compile

// Model is a source model, identified by its content, never by its path.
// ID is the CID of the canonical manifest of its files (docs/design.md).
type Model struct {
	ID    string      `json:"id"`
	Files []ModelFile `json:"files"` // sorted by Name
}

// ModelFile is one file of a model (IR .xml and .bin, or .onnx).
type ModelFile struct {
	Name   string `json:"name"` // base name as the compiler expects it
	Path   string `json:"-"`    // where it is on this host
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Profile says how a model is compiled: device, compile properties and static input shapes. Its ID hashes its
// canonical form (sorted keys, normalised values), so the same profile written two ways has one ID.
type Profile struct {
	Device     string             `json:"device"`
	Properties map[string]string  `json:"properties,omitempty"`
	Shapes     map[string][]int64 `json:"shapes,omitempty"`
	// Kind is "" for an ordinary model or "llm" for an LLM/NPUW pipeline blob (exact OpenVINO version needed).
	Kind string `json:"kind,omitempty"`
}
