DROP TABLE releases;
DROP TABLE job_leases;
