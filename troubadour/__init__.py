"""troubadour: MusicGen music server for games."""

__version__ = "0.1.0"
