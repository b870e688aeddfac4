"""Documents -> NAG codes: the tokenize + extract step shared by the ingest driver, Ray workers and target encoding."""
