"""Chinese text frontend: plain text or SSML -> KAN-TTS symbol strings, one per sentence.

Replaces the closed ``ttsfrd`` binary: normalisation (numbers, dates, units, letters), sentence splitting,
jieba words, pypinyin readings with sandhi and erhua, and the PinYin phone set of the Sambert voices.
"""

from tts_server.inference.frontend.core import DEFAULT_MAX_SENTENCE_CHARS, Frontend, Utterance
from tts_server.inference.frontend.errors import FrontendError
from tts_server.inference.frontend.symbols import load_phone_set

__all__ = ["DEFAULT_MAX_SENTENCE_CHARS", "Frontend", "FrontendError", "Utterance", "load_phone_set"]
