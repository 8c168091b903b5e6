"""A model and a primer -> new ids -> notes -> MIDI: the settings of a generation run (`settings`),
the cached decoder (`decoding`), the token loop (`sampler`), texture-keeping (`texture`), the
grammar and note guards (`constraints`, `note_limits`) and the primer-to-files path
(`continuation`)."""
