"""seqio registrations for GLM: vocabulary, corpora, blank-infilling objectives."""
