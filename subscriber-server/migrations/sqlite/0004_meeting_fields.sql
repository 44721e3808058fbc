-- The optional columns of the contract (README "Database contract"): the reference schema
-- has all of them; an operator's views may have any subset.
ALTER TABLE conflist_conferences ADD COLUMN status TEXT
    CHECK (status IN ('scheduled', 'active', 'ended', 'cancelled'));
ALTER TABLE conflist_conferences ADD COLUMN organizer_uri TEXT;
ALTER TABLE conflist_conferences ADD COLUMN organizer_name TEXT;
ALTER TABLE conflist_conferences ADD COLUMN time_zone TEXT;
ALTER TABLE conflist_conferences ADD COLUMN recurrence TEXT;
ALTER TABLE conflist_conferences ADD COLUMN recurrence_exdates TEXT;
ALTER TABLE conflist_conferences ADD COLUMN revision TEXT;
ALTER TABLE conflist_conferences ADD COLUMN passcode_required BOOLEAN;
ALTER TABLE conflist_members ADD COLUMN response TEXT
    CHECK (response IN ('needs-action', 'accepted', 'declined', 'tentative'));
