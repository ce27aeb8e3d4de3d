"""Chinese text frontend: plain text or SSML -> KAN-TTS symbol strings, one per sentence.

Replaces the closed ``ttsfrd`` binary. Stages: SSML subset (``ssml``), normalisation of numbers, dates, units and
letters (``normalize``), jieba words and pypinyin readings with 一/不, third-tone and neutral-tone rules and erhua
(``pinyin``), sentence splitting with a length cap and prosodic breaks (``core``), and the PinYin phone set of the
Sambert voices (``symbols``).

Not handled yet (readings are predictable, never an error): prosodic-phrase prediction (#2 comes only from
punctuation and spaces, #3 from commas), part-of-speech-based polyphones (pypinyin's phrase table and a few
rules decide; e.g. a standalone 得 is always de5, 地 is de5 only after a word of two or more syllables), English
words (spelled letter by letter with Chinese letter names; the voices' English phones are not used), a neutral
tone lexicon beyond pypinyin's (东西 reads dong1 xi1), traditional characters outside a table of about 440
common ones, digits other than ASCII and full-width, and leading SSML ``<break>`` (nothing precedes it).
"""

from tts_server.inference.frontend.core import DEFAULT_MAX_SENTENCE_CHARS, Frontend, Utterance
from tts_server.inference.frontend.errors import FrontendError
from tts_server.inference.frontend.symbols import load_phone_set

__all__ = ["DEFAULT_MAX_SENTENCE_CHARS", "Frontend", "FrontendError", "Utterance", "load_phone_set"]
