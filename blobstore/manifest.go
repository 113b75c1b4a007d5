package blobstore

import (
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Manifest lists a blob's chunks. Its canonical binary encoding (docs/design.md) is what the blob CID hashes.
type Manifest struct {
	Size      uint64     // total blob size in bytes
	ChunkSize uint32     // ChunkSize for manifests written by this version
	SHA256    [32]byte   // sha256 of the whole blob, so anyone can sha256sum an exported file
	Chunks    [][32]byte // sha2-256 digest of each chunk, in order
}

// ChunkCID is the CIDv1 (raw, sha2-256) of a chunk with this digest.
func ChunkCID(digest [32]byte) cid.Cid { return digestCID(digest[:]) }

func digestCID(d []byte) cid.Cid {
	m, err := mh.Encode(d, mh.SHA2_256)
	if err != nil {
		panic(err) // only on a wrong digest length, a programming error
	}
	return cid.NewCidV1(cid.Raw, m)
}
