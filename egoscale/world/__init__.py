"""The built-in world: procedural human-like experience (video) and a labelled recognition set."""
