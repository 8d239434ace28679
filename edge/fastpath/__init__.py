"""The lean HTTP/1.1 fast path for plain GET/HEAD of public media."""
