"""Tree search: spaces, value functions and the state they share (issue 4)."""
