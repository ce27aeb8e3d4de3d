"""Native Sambert-HifiGan engine: the ModelScope voices run with plain PyTorch (no kantts/ttsfrd/modelscope).

``loader`` reads the published model directory, ``linguistic`` turns KAN-TTS symbol strings into id streams,
``acoustic`` is the Sambert acoustic model, ``vocoder`` the HiFi-GAN generator and ``engine`` ties them to the
engine protocol (``load_sambert_engine``).
"""
