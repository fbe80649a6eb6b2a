// List cursors: an opaque, signed position in a user's list of images (newest first), so that a
// client walks a library of any size page by page at the same cost per page (a keyset seek on
// created_at, id), and no one can forge a position, read someone else's walk, or move a walk to
// another filter.
package main

import (
	"crypto/hmac"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"time"
)

// listCursor is where a page ends: the (created_at, id) of its last image. The next page starts
// after it.
type listCursor struct {
	createdAt time.Time
	id        int64
}

// cursorDomain separates the cursor key's derivation from every other use of the secret.
const cursorDomain = "imageapi list cursor v1"

// cursorVersion is a cursor's first byte: a cursor of another version is refused (422), never
// misread.
const cursorVersion = 1

// cursorMACLen is how much of the HMAC a cursor carries: 96 bits is far beyond guessing.
const cursorMACLen = 12

// errBadCursor answers a cursor that is malformed, tampered with, of another version, or made for
// another user's walk or another filter.
var errBadCursor = newError(http.StatusUnprocessableEntity, "invalid cursor: use the cursor of a list answer's Link or X-Next-Cursor header as it is, with the same tag")

// cursorCodec makes and reads cursors under a key derived from the service's secret.
type cursorCodec struct{ key []byte }

func newCursorCodec(secret []byte) cursorCodec {
	return cursorCodec{key: hmacSHA256(secret, cursorDomain)}
}

// mac binds a position to its owner and filter.
func (c cursorCodec) mac(owner int64, tag string, micros, id int64) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, uint64(owner))
	b = binary.BigEndian.AppendUint64(b, uint64(micros))
	b = binary.BigEndian.AppendUint64(b, uint64(id))
	return hmacSHA256(c.key, string(b)+tag)[:cursorMACLen]
}

// encode returns the cursor after at, in owner's walk with filter tag.
func (c cursorCodec) encode(owner int64, tag string, at listCursor) string {
	micros := at.createdAt.UnixMicro()
	b := []byte{cursorVersion}
	b = binary.BigEndian.AppendUint64(b, uint64(micros))
	b = binary.BigEndian.AppendUint64(b, uint64(at.id))
	b = append(b, c.mac(owner, tag, micros, at.id)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decode reads a cursor of owner's walk with filter tag; errBadCursor for anything else.
func (c cursorCodec) decode(owner int64, tag, s string) (listCursor, error) {
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != 1+8+8+cursorMACLen || b[0] != cursorVersion {
		return listCursor{}, errBadCursor
	}
	micros, id := int64(binary.BigEndian.Uint64(b[1:9])), int64(binary.BigEndian.Uint64(b[9:17]))
	if !hmac.Equal(b[17:], c.mac(owner, tag, micros, id)) || id <= 0 {
		return listCursor{}, errBadCursor
	}
	return listCursor{createdAt: time.UnixMicro(micros).UTC(), id: id}, nil
}
