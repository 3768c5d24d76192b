"""The chat page served at `/` to browsers, with its assets shipped inside the package (no CDN, no build)."""
