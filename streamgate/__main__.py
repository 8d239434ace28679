from streamgate.control.cli import main

raise SystemExit(main())
