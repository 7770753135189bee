"""evolkit: turn math word problems into a verified, reviewed, published training corpus (the RLEIF / WizardMath recipe)."""

__version__ = "0.1.0"
