"""The paper's prompt-learning step counts (section 3, C.1), named once for every part of the library."""

PAPER_LEARNING_STEPS = 1100  # test-time prompt learning of Segment Anyword
SHORT_LEARNING_STEPS = 50  # the learning steps of Segment Anyword_f (whose text encoder is also LoRA-tuned)
MAX_CUSTOM_STEPS = 5000  # the most a user may ask for
