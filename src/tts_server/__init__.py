"""tts-server: a production TTS inference server for Sambert-HifiGan voices."""

__version__ = "0.1.0"
