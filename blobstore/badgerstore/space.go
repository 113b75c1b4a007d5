package badgerstore

// CheckSpace fails with ErrNoSpace unless n more bytes on the store's file system leave MinFreeSpace free: the
// guard every store write passes, for writers beside the store on its file system (the API's upload spool).
func (s *Store) CheckSpace(n uint64) error { return s.checkSpace(n) }
