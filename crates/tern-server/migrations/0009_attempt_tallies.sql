-- `/metrics` counts attempts by state and reason at every scrape: this index covers that
-- GROUP BY, so a scrape reads the index rather than every attempt row (plans included).
CREATE INDEX attempts_state_reason ON attempts (state, reason);
