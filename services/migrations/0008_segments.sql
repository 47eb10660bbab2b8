-- Segments (services/registry/segments.py): named sets of users per tenant. A send to a
-- segment reads its members once, at send time, and writes one log entry per member, so a
-- member added later gets none of the earlier sends. `members` counts the rows in
-- herald_segment_members, kept by the store in the same transaction, so the 100,000 bound is
-- checked without counting.
CREATE TABLE herald_segments (
    tenant_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    members integer NOT NULL DEFAULT 0 CHECK (members >= 0),
    created_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE herald_segment_members (
    tenant_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, name, user_id),
    FOREIGN KEY (tenant_id, name) REFERENCES herald_segments ON DELETE CASCADE
);
