-- crmsync state schema version 7 (sqlite), as created by schema.py at 31a6d77
CREATE TABLE crmsync_activities (
	id INTEGER NOT NULL, 
	link VARCHAR(128) NOT NULL, 
	record_ref VARCHAR(400) NOT NULL, 
	at DATETIME NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	text TEXT NOT NULL, 
	deliver BOOLEAN NOT NULL, 
	delivered_at DATETIME, 
	external_id VARCHAR(64), 
	mentions TEXT, 
	outcome_id INTEGER, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_audit (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(128) NOT NULL, 
	action VARCHAR(64) NOT NULL, 
	target VARCHAR(512), 
	detail TEXT, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_cursors (
	link VARCHAR(128) NOT NULL, 
	side VARCHAR(16) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	value TEXT, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (link, side, kind)
);
CREATE TABLE crmsync_erased (
	record_ref VARCHAR(400) NOT NULL, 
	erased_at DATETIME NOT NULL, 
	erased_by VARCHAR(128) NOT NULL, 
	PRIMARY KEY (record_ref)
);
CREATE TABLE crmsync_identities (
	link VARCHAR(128) NOT NULL, 
	source_id VARCHAR(255) NOT NULL, 
	target_id VARCHAR(255), 
	shadow TEXT NOT NULL, 
	source_version TEXT, 
	target_version TEXT, 
	deleted BOOLEAN NOT NULL, 
	updated_at DATETIME NOT NULL, 
	first_shadow TEXT, 
	created_in INTEGER, 
	PRIMARY KEY (link, source_id)
)
 WITHOUT ROWID;
CREATE TABLE crmsync_link_state (
	link VARCHAR(128) NOT NULL, 
	enabled BOOLEAN, 
	changed_by VARCHAR(128), 
	changed_at DATETIME, 
	next_run_at DATETIME, 
	last_run_at DATETIME, 
	PRIMARY KEY (link)
);
CREATE TABLE crmsync_messages (
	id INTEGER NOT NULL, 
	link VARCHAR(128) NOT NULL, 
	side VARCHAR(16) NOT NULL, 
	record_id VARCHAR(255) NOT NULL, 
	op VARCHAR(16) NOT NULL, 
	version TEXT, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	available_at DATETIME NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	last_error TEXT, 
	claimed_by VARCHAR(64), 
	lease_until DATETIME, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE crmsync_outcomes (
	id INTEGER NOT NULL, 
	run_id INTEGER, 
	link VARCHAR(128) NOT NULL, 
	source_ref VARCHAR(512), 
	target_ref VARCHAR(512), 
	action VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	fields TEXT NOT NULL, 
	message TEXT, 
	at DATETIME NOT NULL, 
	records INTEGER, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_pushed_records (
	system VARCHAR(128) NOT NULL, 
	object VARCHAR(128) NOT NULL, 
	record_id VARCHAR(255) NOT NULL, 
	fields TEXT NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	seq BIGINT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (system, object, record_id)
);
CREATE TABLE crmsync_quota_use (
	system VARCHAR(128) NOT NULL, 
	window_start DATETIME NOT NULL, 
	calls INTEGER NOT NULL, 
	PRIMARY KEY (system)
);
CREATE TABLE crmsync_runs (
	id INTEGER NOT NULL, 
	link VARCHAR(128) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	counts TEXT NOT NULL, 
	error TEXT, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_shapes (
	id BIGINT NOT NULL, 
	names TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_tokens (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	token_hash VARCHAR(128) NOT NULL, 
	created_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (token_hash)
);
CREATE TABLE crmsync_trigger_seen (
	link VARCHAR(128) NOT NULL, 
	source_id VARCHAR(255) NOT NULL, 
	seen TEXT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (link, source_id)
)
 WITHOUT ROWID;
CREATE TABLE crmsync_webhook_deliveries (
	system VARCHAR(128) NOT NULL, 
	webhook_id VARCHAR(255) NOT NULL, 
	received_at DATETIME NOT NULL, 
	PRIMARY KEY (system, webhook_id)
);
CREATE INDEX crmsync_activities_outcome ON crmsync_activities (outcome_id);
CREATE INDEX crmsync_activities_ref ON crmsync_activities (record_ref, id);
CREATE INDEX crmsync_activities_undelivered ON crmsync_activities (deliver, delivered_at);
CREATE UNIQUE INDEX crmsync_identities_target ON crmsync_identities (link, target_id);
CREATE INDEX crmsync_messages_claim ON crmsync_messages (status, link, id);
CREATE UNIQUE INDEX crmsync_messages_one_pending ON crmsync_messages (link, side, record_id) WHERE status = 'pending';
CREATE INDEX crmsync_messages_running ON crmsync_messages (link, side, record_id) WHERE status = 'running';
CREATE INDEX crmsync_outcomes_link_status ON crmsync_outcomes (link, status);
CREATE INDEX crmsync_outcomes_source ON crmsync_outcomes (source_ref);
CREATE INDEX crmsync_outcomes_target ON crmsync_outcomes (target_ref);
CREATE INDEX crmsync_pushed_records_seq ON crmsync_pushed_records (system, object, seq);
INSERT INTO crmsync_meta (key, value) VALUES ('version', '7');
INSERT INTO crmsync_meta (key, value) VALUES ('timeline_from_outcome', '2');
