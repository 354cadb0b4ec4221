"""The pack's one error type: a message an artist can act on (names the input and what was expected)."""


class ConceptError(ValueError):
    """Bad concept file, bad node input, or a concept that does not fit the model."""


class SubjectError(ConceptError):
    """Bad subject-reference input: adapter file, reference image, mask, box or subject chain."""
