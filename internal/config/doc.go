// Package config owns tulle's network configuration: the JSON document stored
// in the datastore at /tulle/<cluster>/config, its defaults and its
// validation. It is pure: no I/O, no kernel, no datastore. Nothing of ours may
// be imported here.
package config
