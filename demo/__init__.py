"""The Gradio demo of Segment Anyword (UI only: the method lives in ``anyword``)."""
