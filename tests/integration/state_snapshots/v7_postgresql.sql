-- crmsync state schema version 7 (postgresql), as created by schema.py at 31a6d77
CREATE TABLE crmsync_activities (
	id BIGSERIAL NOT NULL, 
	link VARCHAR(128) NOT NULL, 
	record_ref VARCHAR(400) NOT NULL, 
	at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	text TEXT NOT NULL, 
	deliver BOOLEAN NOT NULL, 
	delivered_at TIMESTAMP WITHOUT TIME ZONE, 
	external_id VARCHAR(64), 
	mentions TEXT, 
	outcome_id BIGINT, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_audit (
	id SERIAL NOT NULL, 
	at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
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
	updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	PRIMARY KEY (link, side, kind)
);
CREATE TABLE crmsync_erased (
	record_ref VARCHAR(400) NOT NULL, 
	erased_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
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
	updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	first_shadow TEXT, 
	created_in BIGINT, 
	PRIMARY KEY (link, source_id)
);
CREATE TABLE crmsync_link_state (
	link VARCHAR(128) NOT NULL, 
	enabled BOOLEAN, 
	changed_by VARCHAR(128), 
	changed_at TIMESTAMP WITHOUT TIME ZONE, 
	next_run_at TIMESTAMP WITHOUT TIME ZONE, 
	last_run_at TIMESTAMP WITHOUT TIME ZONE, 
	PRIMARY KEY (link)
);
CREATE TABLE crmsync_messages (
	id SERIAL NOT NULL, 
	link VARCHAR(128) NOT NULL, 
	side VARCHAR(16) NOT NULL, 
	record_id VARCHAR(255) NOT NULL, 
	op VARCHAR(16) NOT NULL, 
	version TEXT, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	available_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	last_error TEXT, 
	claimed_by VARCHAR(64), 
	lease_until TIMESTAMP WITHOUT TIME ZONE, 
	PRIMARY KEY (id)
);
CREATE TABLE crmsync_meta (
	key VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY (key)
);
CREATE TABLE crmsync_outcomes (
	id SERIAL NOT NULL, 
	run_id INTEGER, 
	link VARCHAR(128) NOT NULL, 
	source_ref VARCHAR(512), 
	target_ref VARCHAR(512), 
	action VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	fields TEXT NOT NULL, 
	message TEXT, 
	at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
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
	updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	PRIMARY KEY (system, object, record_id)
);
CREATE TABLE crmsync_quota_use (
	system VARCHAR(128) NOT NULL, 
	window_start TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	calls INTEGER NOT NULL, 
	PRIMARY KEY (system)
);
CREATE TABLE crmsync_runs (
	id SERIAL NOT NULL, 
	link VARCHAR(128) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	started_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	finished_at TIMESTAMP WITHOUT TIME ZONE, 
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
	id SERIAL NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	token_hash VARCHAR(128) NOT NULL, 
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	revoked_at TIMESTAMP WITHOUT TIME ZONE, 
	PRIMARY KEY (id), 
	UNIQUE (token_hash)
);
CREATE TABLE crmsync_trigger_seen (
	link VARCHAR(128) NOT NULL, 
	source_id VARCHAR(255) NOT NULL, 
	seen TEXT NOT NULL, 
	updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	PRIMARY KEY (link, source_id)
);
CREATE TABLE crmsync_webhook_deliveries (
	system VARCHAR(128) NOT NULL, 
	webhook_id VARCHAR(255) NOT NULL, 
	received_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
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
