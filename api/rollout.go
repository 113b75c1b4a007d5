package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/npu-agent/npu-agent/rollout"
)

// ErrRolloutsDisabled reports a daemon that follows no rollouts: rollout.trusted_keys is empty or p2p is off.
var ErrRolloutsDisabled = errors.New("rollouts are disabled on this daemon (set rollout.trusted_keys)")

// Rollouts is the rollout side of the daemon (docs/design.md 8). Methods are safe for concurrent use.
type Rollouts interface {
	// AddSource stores the source model at path (absolute, readable by the daemon: an IR .xml with its .bin, or
	// an .onnx) as blobs peers can fetch, and describes it for a manifest.
	AddSource(ctx context.Context, path string) (rollout.SourceModel, error)
	// Publish accepts a signed manifest under this agent's rules and gossips it to the fleet.
	Publish(ctx context.Context, signed []byte) (Rollout, error)
	// List describes every accepted rollout, sorted by name.
	List(ctx context.Context) ([]Rollout, error)
	// Get describes one rollout and what every known peer reports for it (rollout.ErrNotFound if none).
	Get(ctx context.Context, name string) (RolloutStatus, error)
}

// SourceRequest is the body of POST /v1/rollouts/sources.
type SourceRequest struct {
	Model string `json:"model"` // absolute path of the .xml (with its .bin) or .onnx
}

// Rollout is one accepted rollout as this agent holds it.
type Rollout struct {
	Name     string            `json:"name"`
	Version  uint64            `json:"version"`
	Previous uint64            `json:"previous,omitempty"` // the version kept for a quick way back; 0 if none
	ModelID  string            `json:"model_id"`
	Files    []string          `json:"files"`    // file names of the source model
	Profiles []string          `json:"profiles"` // profile IDs
	Selector map[string]string `json:"selector,omitempty"`
	Created  time.Time         `json:"created"`
	Expires  time.Time         `json:"expires"`
	// Expired: no newer manifest arrived before Expires (publishing stopped, or newer ones are withheld); the
	// agent keeps the current version.
	Expired bool `json:"expired"`
	// Selected says whether the selector picks this agent; only selected agents prepare and report.
	Selected bool `json:"selected"`
	// State and Reason are this agent's own progress with Version; empty when it is not selected.
	State  rollout.Phase `json:"state,omitempty"`
	Reason string        `json:"reason,omitempty"`
}

// RolloutStatus is GET /v1/rollouts/{name}: the rollout and one row per known peer.
type RolloutStatus struct {
	Rollout
	Summary rollout.Summary `json:"summary"` // counted against Version
	Peers   []RolloutPeer   `json:"peers"`
}

// RolloutPeer is what one peer (or this agent, Self) last reported. A connected peer that has not reported has
// Version 0 and no State.
type RolloutPeer struct {
	rollout.Row
	Self      bool `json:"self,omitempty"`
	Connected bool `json:"connected"`
	// Hostname, Class and Tags are what the peer's signed member record says (as in Peer), for this agent what it
	// announces; empty until a member record came.
	Hostname string   `json:"hostname,omitempty"`
	Class    string   `json:"class,omitempty"`
	Tags     []string `json:"tags,omitempty"`
	// AgentVersion is its npu-agent version (Peer.Version; "version" here is the rollout's).
	AgentVersion string `json:"agent_version,omitempty"`
}

// AddSource asks the daemon to store a source model for a rollout; see Rollouts.AddSource.
func (c *Client) AddSource(ctx context.Context, model string) (rollout.SourceModel, error) {
	var resp rollout.SourceModel
	body, err := json.Marshal(SourceRequest{Model: model})
	if err != nil {
		return resp, err
	}
	err = c.doJSON(ctx, http.MethodPost, "/v1/rollouts/sources", "application/json", bytes.NewReader(body), &resp)
	return resp, err
}

// PublishRollout hands a signed manifest to the daemon; see Rollouts.Publish.
func (c *Client) PublishRollout(ctx context.Context, signed []byte) (Rollout, error) {
	var resp Rollout
	if len(signed) > rollout.MaxSignedSize {
		return resp, fmt.Errorf("%w: signed manifest of %d bytes, at most %d", rollout.ErrTooLarge, len(signed), rollout.MaxSignedSize)
	}
	err := c.doJSON(ctx, http.MethodPost, "/v1/rollouts", "application/json", bytes.NewReader(signed), &resp)
	return resp, err
}

// Rollouts lists the daemon's accepted rollouts.
func (c *Client) Rollouts(ctx context.Context) ([]Rollout, error) {
	var resp []Rollout
	err := c.doJSON(ctx, http.MethodGet, "/v1/rollouts", "", nil, &resp)
	return resp, err
}

// Rollout returns one rollout with the status of every known peer.
func (c *Client) Rollout(ctx context.Context, name string) (RolloutStatus, error) {
	var resp RolloutStatus
	err := c.doJSON(ctx, http.MethodGet, "/v1/rollouts/"+url.PathEscape(name), "", nil, &resp)
	return resp, err
}
