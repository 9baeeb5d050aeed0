"""Rehearsals of the path real users take with published weights, where those weights cannot be fetched: toy
stand-ins written in the exact published layouts (:mod:`anyword.rehearsal.standins`) and a Hugging Face hub on
127.0.0.1 that serves them (:mod:`anyword.rehearsal.hub`). A client of the library, like ``anyword.shapes``."""
