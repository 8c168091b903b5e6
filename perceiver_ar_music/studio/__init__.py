"""The studio: `perceiver-music serve`, a page in the browser to continue primers take by take,
play duets with the model and teach it your music.

- `jobs`: the one-at-a-time job queue (one generation per process, the rest wait in line);
- `takes`: the output folder: takes and uploaded primers as files, served only by name;
- `settings`: the page's generation settings, parsed and checked by `generate`'s own parser;
- `engine`: the loaded models, primers, sampling with live progress, writing a take;
- `teach`: "Teach it your music": sets of the user's files, fine-tuning jobs, the models they make;
- `duet`: duet mode: the player's turns in, the model's answers out (decoded during the pause);
- `notestream`: a growing token sequence as note events (playback while decoding);
- `piano`: the page's piano, samples rendered from the takes' soundfont;
- `server`: the HTTP and WebSocket routes, a Starlette (ASGI) application with limited inputs;
- `guard`: the Host check (DNS rebinding) and the cross-site (Origin) check of every request;
- `listen`: serving it with uvicorn on 127.0.0.1 by default, with connection deadlines;
- `static/`: the page (HTML, CSS, one script per panel and the piano, no external resources).
"""
