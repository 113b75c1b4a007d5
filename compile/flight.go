package compile

import (
	"context"

	"github.com/npu-agent/npu-agent/internal/flightgroup"
)

// FlightKey identifies one compile: the same model, profile and compatibility class give an interchangeable blob.
type FlightKey struct {
	ModelID   string
	ProfileID string
	Class     string // the compatibility class of the fingerprint compiled for (compat)
}

func (k FlightKey) String() string { return k.ModelID + "/" + k.ProfileID + "/" + k.Class }

// Flight shares one compile among concurrent callers with the same key. The zero value is ready to use.
type Flight struct {
	g flightgroup.Group[FlightKey, struct{}, *Result]
}

// Do runs fn once for all concurrent callers with the same key and gives each of them its outcome. fn runs on a
// context of its own that keeps ctx's values but not its cancellation; that context is cancelled only when every
// waiting caller has gone. A caller whose ctx ends returns ctx.Err() at once without disturbing the others.
// Once fn has returned, the next call with the key runs fn again: Flight shares compiles, it does not cache.
// shared reports whether this caller joined a compile another caller started. Each caller gets its own copy of
// the Result. A panic in fn is not recovered (internal/flightgroup).
func (f *Flight) Do(ctx context.Context, key FlightKey, fn func(context.Context) (*Result, error)) (res *Result, shared bool, err error) {
	res, shared, err = f.g.Do(ctx, key, nil, func(ctx context.Context, _ struct{}) (*Result, error) { return fn(ctx) })
	if res != nil { // a copy, so one caller cannot change another's
		r := *res
		res = &r
	}
	return res, shared, err
}

// Compile compiles req with b, sharing the compile with concurrent callers for the same model, profile and class.
// Callers that join get the first caller's Result, so the blob is at that caller's OutPath.
func (f *Flight) Compile(ctx context.Context, b Backend, class string, req Request) (*Result, bool, error) {
	profileID, err := req.Profile.ID()
	if err != nil {
		return nil, false, err
	}
	key := FlightKey{ModelID: req.Model.ID, ProfileID: profileID, Class: class}
	return f.Do(ctx, key, func(ctx context.Context) (*Result, error) { return b.Compile(ctx, req) })
}

// waiting returns how many callers wait for key (for tests).
func (f *Flight) waiting(key FlightKey) int { return f.g.Waiters(key) }
