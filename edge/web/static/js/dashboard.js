export function mount(main) {
  main.textContent = "Library";
}
